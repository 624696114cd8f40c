from myproject.web import (  # the app lives in the package
    helper,
    app as app,
)
