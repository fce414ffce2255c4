"""NIP Explorer engine: neuron influence, attacks and Neuron-level Inverse Perturbation.

Never imports Streamlit. See ``python -m nip_core --help``.
"""
__version__ = "0.1.0"
