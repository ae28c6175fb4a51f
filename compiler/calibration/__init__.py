"""Calibration: streaming observers (min/max, histograms), the histogram math, calibration-data handling and the
progress line. The pass that runs the float model and feeds the observers is `passes/calibrate.py`."""
