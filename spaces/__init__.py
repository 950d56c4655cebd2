"""What a trial may change: one module per compression knob."""
