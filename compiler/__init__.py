"""quantir.compiler: configs, passes, calibration, qparams math, tuning and the public API."""
