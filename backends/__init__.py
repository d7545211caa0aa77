"""Everything that knows about Keras, KerasHub and TensorFlow devices.

Importing this package is cheap: the modules that import TensorFlow
(`keras_gpt2`, `generation`, `scoring`, `training`, `devices`) are only
imported by the commands that need them.
"""

from backends import quiet

# Before anything imports TensorFlow: its start-up chatter (CUDA probing, CPU features,
# oneDNN notes, absl's pre-init warning) is noise for CLI users; GPT2REG_VERBOSE=1 keeps it.
quiet.install()
