import falcon
api = application = falcon.App()
