"""The study: does CLR still pay off across tables? Its datasets, packed training, runner
and DVC stage (`study/dvc.yaml`)."""
