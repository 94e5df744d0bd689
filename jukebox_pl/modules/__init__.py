"""Plain ``nn.Module`` layers the components are built from; importable without Lightning."""
