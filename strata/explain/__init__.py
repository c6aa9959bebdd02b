"""Looking inside a trained model: which parts of an input its output depends on.

`strata explain RUN_DIR input...` (run.py) attributes a task's scores (class logits, regression
outputs, an autoencoder's anomaly score, a language model's next token) to the input's pixels,
features, time steps or tokens, through Captum:
- attributions.py: integrated gradients, gradient x input, saliency, occlusion, Grad-CAM (images);
- text.py: token attributions at the embedding, coloured on a terminal and in HTML;
- attention.py: a transformer's attention maps per layer and head;
- sanity.py: the randomisation and deletion checks every method must pass.
"""
