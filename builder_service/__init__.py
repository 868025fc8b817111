"""builder_service: compiles checkpoints into engines and keeps them in the artifact store."""
