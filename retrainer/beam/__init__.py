"""Bottleneck extraction on Apache Beam (`retrain-extract`): the same vectors as `retrain`, computed
by any Beam runner (FnApiRunner on one machine, Dataflow, Flink, Spark). Needs `retrainer[beam]`.
"""
