"""Where the processes run: the Accelerator, the launch and its environment, and rank agreement."""
