"""What the commands do, over every registered component: train (one component or all), validate and the
gate, deploy/rollback/verify/history, analyze (predict and /analyze). The CLI and the ModelTrainer facade
call these; the modules are imported directly (``hotelbot_cli.pipeline.train``, ...)."""
