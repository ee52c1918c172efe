def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: heavy test, excluded from the default run (-m \"not slow\")")
