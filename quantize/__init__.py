"""Quantize bundles: the decoder with llama.cpp's own quantizer, the encoder with onnxruntime's tools."""
