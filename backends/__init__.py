"""Everything that knows about Keras, KerasHub and TensorFlow devices.

Importing this package is cheap: the modules that import TensorFlow
(`keras_gpt2`, `generation`, `scoring`, `training`, `devices`) are only
imported by the commands that need them.
"""
