"""The analyses built on the method: one image or one split, what the attack and the defense did to
the neurons (surgery, mediation, pathway, strength, compare, elasticity, fragility, the observation).
They import the method (``nip_core.*`` top level) and nothing above it."""
