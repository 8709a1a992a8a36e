"""featurebank.finetune: fine-tune the top layers from the feature store's cached maps."""
