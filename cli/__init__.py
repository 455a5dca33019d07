"""The command line (`fair`, cli/main.py) and the drivers that run several stages in turn: `fair gen`
(cli/pipeline.py: mining, the committee, the paper's files, the simulator when asked), the demo (cli/demo.py) and
the experiment (cli/experiment.py). The top layer: it may import every stage, the service and the simulator; nothing
imports it."""
