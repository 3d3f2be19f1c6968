"""The Flower ClientApp: local training with Opacus DP-SGD and a privacy accountant kept across rounds."""
