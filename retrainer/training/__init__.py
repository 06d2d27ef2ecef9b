"""Training stage: the new layer on the bottleneck vectors, and what feeds or follows it.

`head` trains the new layer (by default a full-batch fit, `convex`; SGD steps in `loop`, which
fine-tuning shares), for the softmax or sigmoid `objectives`; `distortions` and
`distorted_bottlenecks` make distorted training vectors, `fine_tune` trains the extractor's top with
the head, `evaluate` measures the test split. `options.TrainingOptions` is the stage's view of the
flags.
"""
