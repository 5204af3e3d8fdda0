"""One module per op: its Triton kernel(s), the launcher that checks arguments and picks block
sizes, and the public function. `reference` holds the eager PyTorch version of each."""
