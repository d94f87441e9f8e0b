"""The application layer: batch runs over files (``batch``), reading inputs and writing results
atomically (``io``), heatmaps and plots (``viz``), the deployment audit (``audit``) and model export
(``export``). It stands on the API (``explain``, ``evaluate``) and the core (``model``, ``runtime``); the
CLI stands on it. Nothing below it imports from here."""
