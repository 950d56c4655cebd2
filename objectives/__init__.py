"""What a trial is scored on, measured on the deployable artifact."""
