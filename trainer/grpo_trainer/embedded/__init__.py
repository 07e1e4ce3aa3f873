"""What a run needs without a download: the bundled data and the tiny generated model."""
