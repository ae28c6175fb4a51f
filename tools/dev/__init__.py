"""Development scripts, not user features: `quantir bench` and its child process, the ONNX Runtime peer baseline and
the training of the bundled digits CNN."""
