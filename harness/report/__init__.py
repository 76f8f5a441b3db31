"""Reports: fits and scaling analysis, the leaderboard, plots and the HTML page."""
