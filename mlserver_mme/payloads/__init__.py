"""Request bodies to feature matrices and predictions to answers, for every content type SageMaker's
XGBoost container reads and writes (``codecs``, dispatching to one module per content type;
RecordIO-protobuf framing in ``recordio``)."""
