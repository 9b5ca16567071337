# OpenVINO reads the ONNX file (openvino.convert_model; see gdp_det/deploy.py): mmdeploy 1.3's
# own conversion runs the Model Optimizer `mo`, which OpenVINO 2025+ no longer ships.
backend_config = dict(type='openvino')
