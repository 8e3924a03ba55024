"""What every other package stands on: errors for people, atomic writes, the user cache, input limits, secrets."""
