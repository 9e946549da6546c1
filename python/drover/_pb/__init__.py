"""Stubs generated from api/droverpb/drover.proto by scripts/genpy; do not
edit drover_pb2.py and drover_pb2_grpc.py, regenerate them."""
