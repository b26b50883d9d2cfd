"""Request bodies to feature matrices and predictions to answers, for every content type SageMaker's
XGBoost container reads and writes (``codecs``; RecordIO-protobuf in ``recordio``)."""
