"""Packaging for tornado-signin.

Layout: the core is the import package ``tornado_signin``; the top-level
``templates/`` folder ships inside it as ``tornado_signin/templates`` (so the
page is found from an editable install and from a wheel alike); the
emulator's own templates ship in ``tornado_signin/emulator/templates``; the built-in
token stores live in ``backends/tornado_signin_backends`` and are reached only
through the ``tornado_signin.backends`` entry-point group, the same door a
third-party plugin uses.
"""

from setuptools import setup

SQL = ["sqlalchemy>=2.0", "psycopg[binary]>=3.1", "pymysql>=1.1"]
DYNAMODB = ["boto3>=1.28"]
# hiredis: redis-py parses replies with it when installed (measured: -13% of the hub's CPU per login).
REDIS = ["redis>=5.0", "hiredis>=2.0"]
# The example host app (examples/drive) calls Drive v3 with Google's client library.
EXAMPLES = ["google-api-python-client>=2.100"]
TEST = [
    "pytest>=8",
    "pytest-tornado==0.8.1",
    "pytest-timeout>=2.2",
    # pytest-tornado 0.8.1 imports pkg_resources, which setuptools 81 removed.
    "setuptools<81",
    "moto[dynamodb,server]>=5.0",
    "playwright>=1.40",
    # The benchmark's peers, run by its CI smoke (tests/test_bench_smoke.py); pycurl: Tornado's curl
    # client, the benchmark's ceilings.
    "pycurl>=7.45",
    "flask>=3",
    "gunicorn>=21",
    # 1.4: Flow generates a PKCE verifier by default (tests/test_google_clients.py relies on it).
    "google-auth-oauthlib>=1.4",
    # The emulator's Drive v3 is tested with Google's own client library.
    *EXAMPLES,
    # Static checks (./dev lint; .ci/run fails on any finding), pinned to a
    # minor release so a new release's rules do not fail CI unannounced.
    "ruff>=0.17,<0.18",
    "mypy>=2.4,<2.5",
    "types-PyYAML",
    "types-requests-oauthlib",
    "boto3-stubs[dynamodb]",
]

setup(
    name="tornado-signin",
    version="0.1.0",
    description="Google Sign-In server-side (one-time code) flow for Tornado, with pluggable token stores",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "tornado_signin",
        "tornado_signin.emulator",
        "tornado_signin.testing",
        "tornado_signin.web",
        "tornado_signin.templates",
        "tornado_signin_backends",
        "tornado_signin_backends.redis_hub",
        "tornado_signin_backends.sql",
    ],
    package_dir={
        "tornado_signin": "tornado_signin",
        "tornado_signin.templates": "templates",
        "tornado_signin_backends": "backends/tornado_signin_backends",
    },
    package_data={
        "tornado_signin.templates": ["*.html", "*.js"],
        "tornado_signin.emulator": ["templates/*.html", "templates/*.js"],
        "tornado_signin.web": ["static/*.js", "static/*.ico"],
    },
    install_requires=[
        "tornado>=6.3",
        "google-auth>=2.20",
        "requests-oauthlib>=1.3",
        "cryptography>=41",
        "pyyaml>=6",
        # The HTTP/1.1 parser of the calls to Google (tornado_signin.http_client).
        "httptools>=0.6",
        # /metrics: the text format, and the sum over the workers of `serve --processes N` (multiprocess mode).
        "prometheus_client>=0.17",
        # The demo's default store is SQL on SQLite.
        *SQL[:1],
    ],
    extras_require={
        "sql": SQL,
        "dynamodb": DYNAMODB,
        "redis": REDIS,
        "test": TEST,
        "examples": EXAMPLES,
        "all": SQL + DYNAMODB + REDIS,
    },
    entry_points={
        "console_scripts": ["tornado-signin = tornado_signin.cli:main"],
        "tornado_signin.backends": [
            "memory = tornado_signin_backends.memory:MemoryTokenStore",
            "sql = tornado_signin_backends.sql:SQLTokenStore",
            "dynamodb = tornado_signin_backends.dynamodb:DynamoDBTokenStore",
            "file = tornado_signin_backends.file:FileTokenStore",
        ],
        "tornado_signin.hubs": [
            "memory = tornado_signin_backends.memory_hub:MemoryHub",
            "redis = tornado_signin_backends.redis_hub:RedisHub",
        ],
    },
    classifiers=[
        "Framework :: Tornado",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP :: Session",
    ],
)
