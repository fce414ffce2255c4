"""Plotly figures for every view (pure functions, no Streamlit): one module per view.

Every function takes engine results (:class:`~nip_core.analyses.explain.Explanation`,
:class:`~nip_core.influence.InfluenceProfile`, an ``evaluate`` result dict, tensors) and returns
a ``plotly.graph_objects.Figure`` with a title, axis labels and a colour-bar title that says
what is shown and in which unit. The CLI, the tests and the app share them; the conventions are in
:mod:`nip_core.figures.common`. Every view's public names are re-exported here
(``from nip_core import figures as F; F.surgery_bars(...)``).
"""
from nip_core.figures.common import VARIANTS, VARIANT_COLOURS, GROUP_COLOURS, DIVERGING, DEAD_GREY, grid_shape, to_grid, neuron_groups, neuron_grids_png, GROUP_MARKERS, snap_to_zero
from nip_core.figures.explore import influence_heatmaps, difference_heatmaps, group_chart, signature_verdict, prediction_bars, image_figure, PERTURBATION_MAX_SIDE, perturbation_figure, spatial_overlay, explanation_figures
from nip_core.figures.profiles import neuron_across_classes, profile_heatmap, defense_comparison
from nip_core.figures.surgery import SURGERY_VARIANTS, SURGERY_COLOURS, recovery_text, surgery_bars, surgery_verdict, surgery_picker, picked_neurons
from nip_core.figures.benchmark import bare_names, evaluation_heatmap, per_class_figure, mediation_groups_figure, mediation_defenses_figure, elasticity_figure
from nip_core.figures.fragility import fragility_figure
from nip_core.figures.compare import compare_heatmaps
from nip_core.figures.layers import STRIP_COLOURS, layer_strip_figure, picked_layer_neuron
from nip_core.figures.strength import STRENGTH_COLOURS, StrengthFrame, eps_text, strength_frames, strength_response

__all__ = ["DEAD_GREY", "DIVERGING", "GROUP_COLOURS", "GROUP_MARKERS", "PERTURBATION_MAX_SIDE", "STRENGTH_COLOURS", "STRIP_COLOURS", "SURGERY_COLOURS", "SURGERY_VARIANTS", "StrengthFrame", "VARIANTS", "VARIANT_COLOURS", "bare_names", "compare_heatmaps", "defense_comparison", "difference_heatmaps", "elasticity_figure", "eps_text", "evaluation_heatmap", "explanation_figures", "fragility_figure", "grid_shape", "group_chart", "image_figure", "influence_heatmaps", "layer_strip_figure", "mediation_defenses_figure", "mediation_groups_figure", "neuron_across_classes", "neuron_grids_png", "neuron_groups", "per_class_figure", "perturbation_figure", "picked_layer_neuron", "picked_neurons", "prediction_bars", "profile_heatmap", "recovery_text", "signature_verdict", "snap_to_zero", "spatial_overlay", "strength_frames", "strength_response", "surgery_bars", "surgery_picker", "surgery_verdict", "to_grid"]
