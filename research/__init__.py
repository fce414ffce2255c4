"""The research record of label-free NIP (``docs/nip-research.md``): one-off scripts, indexed in
``research/README.md``. Not part of the product: ``nip_core/`` and ``app/`` never import it."""
