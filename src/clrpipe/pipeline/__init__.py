"""The pipeline: config, data, training, tracking/registry/serving, comparison/gate and
the DVC stages with the `clrpipe` command. The library (`clrpipe`'s top level) never imports it."""
