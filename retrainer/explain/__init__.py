"""Why a model chose its class: Grad-CAM on an exported graph (`gradcam`) and heat maps in the
image's own coordinates (`heatmap`). Used by label-image --explain and the report's heat maps.
"""
