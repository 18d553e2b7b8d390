"""The training wing: the Keras fit loop, the built-in model, one trial, the legacy tfa path."""
