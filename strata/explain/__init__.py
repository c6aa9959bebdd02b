"""Looking inside a trained model: which parts of an input its output depends on (attributions).

`strata explain RUN_DIR input...` attributes a task's scores (class logits, regression outputs, an
autoencoder's anomaly score) to the input's features, pixels or time steps; see attributions.py.
"""
