"""`kubectl cellar`: day-two commands over the chart's resources and CronJobs, from a person's terminal."""
