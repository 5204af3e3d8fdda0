"""The AuroraEdgeV reference model (vision tower, projector, compressor, fusion, Qwen2 LLM) is issue #4;
nothing is exported here until it lands."""
