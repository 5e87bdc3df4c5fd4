"""The web app (`kvjax-app`, `python -m sample.app`; docs/app.md): one pipeline shared by every visitor, a
bounded queue of jobs run one at a time (`jobs`), and a small HTTP server and page over it (`server`,
`page.html`; FastAPI and uvicorn, the `app` extra). What a job makes is up to its generator: the program
(sample/app.py) supplies one that reads the sample program's options."""
