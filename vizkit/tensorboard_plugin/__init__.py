"""vizkit's tab in TensorBoard (a dynamic plugin: TensorBoard finds it through the `tensorboard_plugins` entry
point that installing vizkit declares). plugin.py holds the routes and imports no torch; live.py, imported on
the tab's first request, opens the runs' models and computes each update; static/index.js is the page."""
