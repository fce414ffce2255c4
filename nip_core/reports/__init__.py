"""Self-contained HTML of a result (plotly.js inline, images as data URLs): what the CLI writes beside
its JSON and the app offers for download. The top of the engine with :mod:`nip_core.figures`."""
