"""Training machinery shared by every component, ignorant of which component it trains.

- events: TrainingEvent and the listener the CLI renders;
- tracking: MLflow runs (nested under an active parent);
- monitor: system metrics, library versions, hardware;
- loop: the ONE Hugging Face Trainer loop (two learning rates, best-epoch restore, early stopping);
- calibration: the out-of-scope threshold;
- classify: fit a sentence classifier with the loop (intents, sentiment, HPO trials, CV folds);
- hpo: Optuna search over classify's fits;
- distributed: torchrun / accelerate launch (the main process publishes, the others only fit).
"""
