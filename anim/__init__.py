"""sdfleet animation: schedules, prompts, seeds, plan, motion, colour, render loop, video."""
