"""The saved model: what a run folder holds (files), the typed model card read from and written to
model.json (card), the one preprocessing definition (the card's Preprocess), and the predictors that
run it (torch, onnx, int8). Using a saved model imports this floor, never training."""

# What --backend takes (predict, evaluate, serve): auto is onnx where onnxruntime is installed and the
# model exports, else torch (artifact/predictor.py). Here, free of numpy and torch, for the CLI's parser.
BACKENDS = ("auto", "torch", "onnx", "int8")
