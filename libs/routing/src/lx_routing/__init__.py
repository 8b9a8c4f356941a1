"""Pure routing rules: filters, schedules, cap periods, distribution order."""
