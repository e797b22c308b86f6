"""The parts of `diffexp-compare`'s recipe report: `runs` reads run folders, `ranking` scores and ranks them,
`plots` draws, `pages` writes the tables and Markdown, `experiments` writes the best recipes back as configs."""
