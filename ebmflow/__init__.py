"""ebmflow: Flow++ with energy-based base distributions (RBM-Flow, D-Flow), as a Lightning application."""
