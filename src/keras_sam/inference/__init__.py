"""Inference: the predictor, the automatic mask generator with its mask
utilities (RLE, NMS, crops), and the coordinate transforms they share."""
