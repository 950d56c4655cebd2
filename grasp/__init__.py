"""The grasp domain: models, grasp geometry and metric, datasets, simulation, training."""
