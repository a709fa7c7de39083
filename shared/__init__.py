"""Code shared by the services, the gateway and training: vocabulary, preprocessing, schemas."""
