"""A symbol's state follows its Kafka partition: which partitions this daemon owns and the
claims its registry writes carry (ownership), what it does when partitions move (handover:
rebuild the history from Kafka, claim, restore the trial checkpoint), and the periodic
trial checkpoints (checkpoints)."""
